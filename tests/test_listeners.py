"""Unix listening sockets: created with their mode, stale ones replaced, live
ones and other files refused, nothing leaked on failure."""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from trio_fastcgi._bind import open_binds, parse_bind
from trio_fastcgi._listeners import (
    MAX_UNIX_PATH,
    ListenError,
    bind_unix_socket,
    exposed_address,
    open_unix_listener,
)

HAVE_PROC_FD = os.path.isdir("/proc/self/fd")


def umask_mode(directory: Path) -> int:
    """The permissions a socket bound the plain way gets under the umask."""
    probe = directory / "probe.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(probe))
        mode = stat.S_IMODE(os.lstat(probe).st_mode)
    probe.unlink()
    return mode


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if HAVE_PROC_FD else 0


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def exchange(sock: socket.socket, path: Path) -> None:
    """A client connects to *path* and trades bytes with *sock*'s accept."""
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))
        accepted, _ = sock.accept()
        with accepted:
            client.sendall(b"ping")
            assert accepted.recv(4) == b"ping"
            accepted.sendall(b"pong")
            assert client.recv(4) == b"pong"


@pytest.mark.parametrize("mode", [0o660, 0o600, 0o666, 0o700])
def test_socket_has_the_requested_mode(
    tmp_path: Path, sockets: list[socket.socket], mode: int
) -> None:
    path = tmp_path / "app.sock"
    sockets.append(bind_unix_socket(path, mode=mode))
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert stat.S_IMODE(os.lstat(path).st_mode) == mode
    assert os.listdir(tmp_path) == ["app.sock"]
    exchange(sockets[0], path)


def test_mode_none_keeps_the_umask_permissions(
    tmp_path: Path, sockets: list[socket.socket]
) -> None:
    expected = umask_mode(tmp_path)
    path = tmp_path / "app.sock"
    sockets.append(bind_unix_socket(path))
    assert stat.S_IMODE(os.lstat(path).st_mode) == expected
    assert os.listdir(tmp_path) == ["app.sock"]


@pytest.mark.parametrize(
    ("umask", "mode", "at_creation"),
    [
        (0, 0o600, 0o600),
        (0, 0o640, 0o640),
        (0, 0o660, 0o660),
        (0o077, 0o660, 0o600),  # the umask still applies until the chmod
    ],
)
def test_the_file_never_has_more_permissions_than_asked(
    tmp_path: Path,
    sockets: list[socket.socket],
    monkeypatch: pytest.MonkeyPatch,
    umask: int,
    mode: int,
    at_creation: int,
) -> None:
    # The file bind() creates already has no more than *mode* (even with an
    # empty umask, under which a plain bind gives 0o777); the chmod after it
    # only adds back what the umask removed.
    path = tmp_path / "app.sock"
    at_chmod: list[int] = []
    real_chmod = os.chmod

    def chmod(target: str, requested: int) -> None:
        at_chmod.append(stat.S_IMODE(os.lstat(target).st_mode))
        real_chmod(target, requested)

    monkeypatch.setattr(os, "chmod", chmod)
    old_umask = os.umask(umask)
    try:
        sockets.append(bind_unix_socket(path, mode=mode))
        with socket.socket(socket.AF_UNIX) as plain:
            plain.bind(str(tmp_path / "plain.sock"))
    finally:
        os.umask(old_umask)
    assert at_chmod == [at_creation]
    assert stat.S_IMODE(os.lstat(path).st_mode) == mode
    assert stat.S_IMODE(os.lstat(tmp_path / "plain.sock").st_mode) == 0o777 & ~umask
    exchange(sockets[0], path)


def test_stale_socket_is_replaced(tmp_path: Path, sockets: list[socket.socket]) -> None:
    path = tmp_path / "app.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # bound, never listening: what a dead process leaves
    sockets.append(bind_unix_socket(path, mode=0o600))
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["app.sock"]
    exchange(sockets[0], path)


def test_live_socket_is_refused_and_left_alone(
    tmp_path: Path, sockets: list[socket.socket]
) -> None:
    path = tmp_path / "app.sock"
    sockets.append(bind_unix_socket(path, mode=0o600))
    inode = os.lstat(path).st_ino
    with pytest.raises(OSError, match="another process is listening") as info:
        bind_unix_socket(path, mode=0o666)
    assert info.value.errno == errno.EADDRINUSE
    assert os.lstat(path).st_ino == inode
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["app.sock"]
    probe, _ = sockets[0].accept()  # the stale check's probe connected
    probe.close()
    exchange(sockets[0], path)


def test_regular_file_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "precious.txt"
    path.write_text("keep me")
    with pytest.raises(FileExistsError):
        bind_unix_socket(path, mode=0o660)
    assert path.read_text() == "keep me"
    assert os.listdir(tmp_path) == ["precious.txt"]


def test_relative_path(
    tmp_path: Path, sockets: list[socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    sockets.append(bind_unix_socket("app.sock", mode=0o660))
    assert stat.S_IMODE(os.lstat(tmp_path / "app.sock").st_mode) == 0o660
    assert os.listdir(tmp_path) == ["app.sock"]
    exchange(sockets[0], tmp_path / "app.sock")


def deep_path(tmp_path: Path, length: int, name: str = "a.sock") -> Path:
    """A socket path of *length* bytes under *tmp_path*."""
    filler = length - len(os.fsencode(tmp_path)) - len(name) - 2
    assert filler > 0
    directory = tmp_path / ("d" * filler)
    directory.mkdir()
    path = directory / name
    assert len(os.fsencode(path)) == length
    return path


def test_path_too_long_for_a_unix_socket_is_refused(tmp_path: Path) -> None:
    path = deep_path(tmp_path, MAX_UNIX_PATH + 1)
    with pytest.raises(OSError, match="bytes a unix socket path may have") as info:
        bind_unix_socket(path, mode=0o660)
    assert info.value.errno == errno.ENAMETOOLONG
    assert os.listdir(path.parent) == []


def fail(exc: BaseException) -> Callable[..., None]:
    def raiser(*args: object, **kwargs: object) -> None:
        raise exc

    return raiser


@pytest.mark.parametrize("exc", [OSError(errno.EIO, "boom"), KeyboardInterrupt()])
@pytest.mark.parametrize("where", ["bind", "chmod", "listen"])
def test_a_failure_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, exc: BaseException
) -> None:
    path = tmp_path / "app.sock"
    if where == "bind":
        monkeypatch.setattr(socket.socket, "bind", fail(exc))
    elif where == "chmod":
        monkeypatch.setattr(os, "chmod", fail(exc))
    else:
        monkeypatch.setattr(socket.socket, "listen", fail(exc))
    before = open_fds()
    with pytest.raises(type(exc)):
        bind_unix_socket(path, mode=0o660)
    assert open_fds() == before  # the socket is closed; a bound file stays, stale


@pytest.mark.parametrize("mode", [0o660, 0o600, 0o666, None])
async def test_open_unix_listener(tmp_path: Path, mode: int | None) -> None:
    expected = umask_mode(tmp_path) if mode is None else mode
    path = tmp_path / "app.sock"
    listener = await open_unix_listener(path, mode=mode, backlog=5)
    async with listener:
        assert stat.S_IMODE(os.lstat(path).st_mode) == expected
        assert os.listdir(tmp_path) == ["app.sock"]
        async with await trio.open_unix_socket(str(path)) as client:
            server = await listener.accept()
            async with server:
                await client.send_all(b"ping")
                assert await server.receive_some(4) == b"ping"
                await server.send_all(b"pong")
                assert await client.receive_some(4) == b"pong"


async def test_open_unix_listener_refuses_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "precious.txt"
    path.write_text("keep me")
    with pytest.raises(FileExistsError):
        await open_unix_listener(path, mode=0o660)
    assert path.read_text() == "keep me"
    assert os.listdir(tmp_path) == ["precious.txt"]


@pytest.mark.parametrize("mode", [0o660, 0o600, 0o666, None])
def test_open_binds_unix_mode(tmp_path: Path, mode: int | None) -> None:
    # The trio-fastcgi command's path to the same function.
    expected = umask_mode(tmp_path) if mode is None else mode
    path = tmp_path / "app.sock"
    [bound] = open_binds([parse_bind(f"unix:{path}")], socket_mode=mode)
    try:
        assert stat.S_IMODE(os.lstat(path).st_mode) == expected
        assert bound.unix_inode == os.lstat(path).st_ino
        assert bound.describe() == f"unix:{path}"
        assert bound.sock.getsockname() == str(path)
        assert os.listdir(tmp_path) == ["app.sock"]
        exchange(bound.sock, path)
    finally:
        bound.close()
        bound.remove_file()
    assert os.listdir(tmp_path) == []


def test_open_binds_closes_the_unix_socket_if_a_later_bind_fails(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    regular = tmp_path / "precious.txt"
    regular.write_text("keep me")
    with pytest.raises(FileExistsError):
        open_binds([parse_bind(f"unix:{path}"), parse_bind(f"unix:{regular}")])
    assert sorted(os.listdir(tmp_path)) == ["precious.txt"]


@pytest.mark.parametrize(
    ("family", "sockname", "expected"),
    [
        (socket.AF_INET, ("127.0.0.1", 9000), None),
        (socket.AF_INET, ("127.8.0.1", 9000), None),
        (socket.AF_INET6, ("::1", 9000, 0, 0), None),
        (socket.AF_INET6, ("::ffff:127.0.0.1", 9000, 0, 0), None),
        (socket.AF_INET, ("0.0.0.0", 9000), "0.0.0.0:9000"),
        (socket.AF_INET, ("192.0.2.7", 9000), "192.0.2.7:9000"),
        (socket.AF_INET6, ("::", 9000, 0, 0), "[::]:9000"),
        (socket.AF_INET6, ("fe80::1%eth0", 9000, 0, 2), "[fe80::1%eth0]:9000"),
        (socket.AF_UNIX, "/run/app.sock", None),
    ],
)
def test_exposed_address(family: int, sockname: object, expected: str | None) -> None:
    assert exposed_address(family, sockname) == expected


def test_open_binds_names_a_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "app.sock"
    with pytest.raises(ListenError) as caught:
        open_binds([parse_bind(f"unix:{path}")])
    assert str(caught.value) == (
        f"cannot listen on unix:{path}: the directory {path.parent} does not exist"
    )
    assert caught.value.errno == errno.ENOENT


def test_open_binds_names_a_busy_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ListenError) as caught:
            open_binds([parse_bind(f"127.0.0.1:{port}")])
    assert str(caught.value) == (
        f"cannot listen on 127.0.0.1:{port}: "
        "the address is already in use (is another server running there?)"
    )
