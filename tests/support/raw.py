"""A socket client that sends exactly the bytes a test gives it (bare LFs, smuggled dots,
pipelined commands, half lines) and reads whole replies. smtplib would fix up what these
tests need to send broken."""

from __future__ import annotations

import socket

__all__ = ["RawClient"]


class RawClient:
    def __init__(self, target, source: str = "127.0.0.1", timeout: float = 10.0) -> None:
        """``target``: a port, or anything with a ``port`` (a RelayProcess)."""
        port = target if isinstance(target, int) else target.port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0))
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def raw_reply(self) -> bytes:
        """One whole reply as received, CRLFs included. RFC 5321 4.2.1: the last line of a
        reply has a space after the code, the others a hyphen."""
        while True:
            lines = self.buf.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if len(line) >= 4 and line[3:4] == b" ":
                    size = sum(len(x) + 2 for x in lines[:i + 1])
                    out, self.buf = self.buf[:size], self.buf[size:]
                    return out
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; pending {self.buf!r}")
            self.buf += chunk

    def reply(self) -> tuple[int, bytes]:
        """One whole reply: its code, and its lines without the final CRLF."""
        text = self.raw_reply()[:-2]
        return int(text[:3]), text

    def say(self, data: bytes) -> bytes:
        """Send, then read one whole reply (as received)."""
        self.sock.sendall(data)
        return self.raw_reply()

    def closed(self) -> bool:
        """True when the server has closed the connection and sent nothing more."""
        if self.buf:
            return False
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()
