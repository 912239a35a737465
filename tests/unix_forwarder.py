"""A tiny unix-socket forwarder, standard library only: ``LISTEN TARGET [MODE]``.

The Docker Desktop mode tests run it as a second OS user (with the system's python3,
which that user can execute) to stand in for that user's Docker Desktop: a socket in
the user's home, listened on by the user, leading to the test dockerd. Run as root with
``MODE`` it is the bridge the user's copy connects to. Prints ``ready`` once listening.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _serve(client: socket.socket, target: str) -> None:
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(target)
    except OSError:
        client.close()
        upstream.close()
        return
    back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
    back.start()
    _pipe(client, upstream)
    back.join()
    client.close()
    upstream.close()


def main() -> None:
    listen, target = sys.argv[1], sys.argv[2]
    with contextlib.suppress(FileNotFoundError):
        os.unlink(listen)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(listen)
    if len(sys.argv) > 3:
        os.chmod(listen, int(sys.argv[3], 8))
    server.listen(128)
    print("ready", flush=True)
    while True:
        client, _ = server.accept()
        threading.Thread(target=_serve, args=(client, target), daemon=True).start()


if __name__ == "__main__":
    main()
