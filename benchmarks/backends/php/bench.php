<?php
// php-fpm serving the benchmark routes.
$uri = $_SERVER['DOCUMENT_URI'];
header('Content-Type: text/plain');
if ($uri === '/hello') {
    header('Content-Length: 14');
    echo "Hello, World!\n";
} elseif ($uri === '/1m') {
    $block = '';
    for ($i = 0; $i < 256; $i++) {
        $block .= chr($i);
    }
    $chunk = str_repeat($block, 256);
    header('Content-Length: ' . (16 * strlen($chunk)));
    for ($i = 0; $i < 16; $i++) {
        echo $chunk;
        flush();
    }
} elseif ($uri === '/post') {
    $answer = (string) strlen(file_get_contents('php://input'));
    header('Content-Length: ' . strlen($answer));
    echo $answer;
} else {
    http_response_code(404);
    header('Content-Length: 0');
}
