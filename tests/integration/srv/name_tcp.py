#!/usr/bin/python3
"""Tiny TCP helpers for gateway_srv_test.sh (run with /usr/bin/python3).

  name_tcp.py serve NAME PORT     accept on 127.0.0.1:PORT; send NAME to every
                                  connection, then close it. Runs until killed.
  name_tcp.py count PORT N        open N sequential connections to 127.0.0.1:PORT
                                  and print one line "<name> <count>" per name
                                  received ("<refused>"/"<empty>" for failures).
"""
import collections
import socket
import sys


def serve(name, port):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(512)
    payload = name.encode()
    while True:
        conn, _ = srv.accept()
        try:
            conn.sendall(payload)
        except OSError:
            pass
        conn.close()


def count(port, n):
    counts = collections.Counter()
    for _ in range(n):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                data = b""
                while True:
                    chunk = s.recv(256)
                    if not chunk:
                        break
                    data += chunk
                counts[data.decode() or "<empty>"] += 1
        except OSError:
            counts["<refused>"] += 1
    for name, c in sorted(counts.items()):
        print(name, c)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "count":
        count(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit("usage: name_tcp.py serve NAME PORT | count PORT N")
