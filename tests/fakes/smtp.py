"""A real SMTP server (aiosmtpd) on loopback that records every message it accepts.

It offers STARTTLS and AUTH with a certificate from a throwaway CA
(``trustme``; ``ca_path`` is that CA as a PEM file for ``SSL_CERT_FILE``), or
speaks TLS from the first byte (``implicit_tls=True``, for ``smtps://``).
``answers`` queues replies that the next DATA commands get instead of
``250``: ``fake.answers.append("421 4.3.2 try later")``.
"""

from __future__ import annotations

import ssl
import threading
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from tempfile import mkdtemp

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from incident.embedded import free_port

USER = "mailer"
PASSWORD = "s3cret-smtp-pa55word"


class _Handler:
    def __init__(self, fake: FakeSMTP) -> None:
        self.fake = fake

    async def handle_DATA(self, server, session, envelope) -> str:
        with self.fake.lock:
            self.fake.data_commands += 1
            if self.fake.answers:
                return self.fake.answers.pop(0)
            self.fake.messages.append(
                (list(envelope.rcpt_tos), message_from_bytes(envelope.content, policy=policy.default))
            )
            self.fake.tls_used.append(server.transport.get_extra_info("ssl_object") is not None)
        return "250 2.0.0 OK queued"


class FakeSMTP:
    def __init__(self, *, implicit_tls: bool = False) -> None:
        self.implicit_tls = implicit_tls
        self.lock = threading.Lock()
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self.tls_used: list[bool] = []
        self.answers: list[str] = []
        self.data_commands = 0
        self.logins: list[str] = []
        self.ca = trustme.CA()
        self.ca_path = Path(mkdtemp(prefix="fake-smtp-")) / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_path))
        self.port = free_port()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        kwargs = {"ssl_context": context} if implicit_tls else {"tls_context": context}
        self._controller = Controller(
            _Handler(self), hostname="127.0.0.1", port=self.port,
            authenticator=self._authenticate,
            # Implicit TLS is not STARTTLS, which is all aiosmtpd counts as TLS for AUTH.
            auth_require_tls=not implicit_tls,
            server_hostname="localhost", **kwargs,
        )

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (
            auth_data.login.decode(), auth_data.password.decode()
        ) == (USER, PASSWORD)
        if ok:
            self.logins.append(auth_data.login.decode())
        return AuthResult(success=ok)

    @property
    def url(self) -> str:
        scheme = "smtps" if self.implicit_tls else "smtp"
        return f"{scheme}://{USER}:{PASSWORD}@localhost:{self.port}"

    def received(self) -> list[EmailMessage]:
        with self.lock:
            return [message for _, message in self.messages]

    def __enter__(self) -> FakeSMTP:
        if self.implicit_tls:
            # The controller's readiness check speaks plain SMTP; skip it for TLS.
            self._controller.ready_timeout = 5
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()
