// Go net/http/fcgi serving the benchmark routes (standard library only).
package main

import (
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/fcgi"
	"strconv"
)

var hello = []byte("Hello, World!\n")

const chunkSize = 64 * 1024
const chunksPerMiB = 16
const maxPost = 64 * 1024 * 1024

func makeChunk() []byte {
	chunk := make([]byte, chunkSize)
	for i := range chunk {
		chunk[i] = byte(i % 256)
	}
	return chunk
}

func main() {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", 0, "TCP port")
	flag.Parse()
	chunk := makeChunk()
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", strconv.Itoa(len(hello)))
		w.Write(hello)
	})
	mux.HandleFunc("/1m", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", strconv.Itoa(chunkSize*chunksPerMiB))
		for i := 0; i < chunksPerMiB; i++ {
			w.Write(chunk)
		}
	})
	mux.HandleFunc("/post", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, maxPost))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		answer := []byte(strconv.Itoa(len(body)))
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", strconv.Itoa(len(answer)))
		w.Write(answer)
	})
	listener, err := net.Listen("tcp", net.JoinHostPort(*host, strconv.Itoa(*port)))
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(fcgi.Serve(listener, mux))
}
