"""Email over SMTP, with the standard library: ``smtplib`` and ``EmailMessage``.

``smtp://user:password@host:587`` upgrades with STARTTLS whenever the server
offers it; ``smtps://user:password@host:465`` speaks TLS from the first byte.
Certificates are verified against the default trust store (``SSL_CERT_FILE``
replaces it, for a private CA).

Every message of one incident is threaded under the first: its Message-ID is
derived from the ledger row (so a retry of the row sends the same one), and
later messages name the first in ``In-Reply-To`` and ``References``.

SMTP's own reply classes decide retries: a 4xx reply, a timeout or a refused
or dropped connection is temporary; a 5xx reply is permanent and its text is
kept. Errors never carry the password.
"""

from __future__ import annotations

import hashlib
import html
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from urllib.parse import unquote, urlsplit

import structlog

from incident import tracing
from incident.integrations.base import (
    IncidentView,
    PermanentDeliveryError,
    TransientDeliveryError,
)

log = structlog.get_logger(__name__)

DEFAULT_TIMEOUT = 20.0
# Digest keys for mail are the recipients behind this prefix, apart from Slack channels.
DIGEST_KEY_PREFIX = "mail:"


def message_id(ledger_id: int, stamp: str, domain: str) -> str:
    """The Message-ID of one ledger row's mail, ``<…>`` included.

    ``stamp`` (the row's creation time) keeps ids apart across installations
    and database restores, where ledger ids start again.
    """
    digest = hashlib.sha256(stamp.encode()).hexdigest()[:12]
    return f"<incident.{ledger_id}.{digest}@{domain}>"


def subject(incident: IncidentView) -> str:
    return f"[{incident.severity}] {incident.title} (#{incident.id})"


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    implicit_tls: bool
    user: str | None
    password: str | None

    @classmethod
    def from_url(cls, url: str) -> SmtpServer:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("INCIDENT_SMTP_URL must be smtp://[user:password@]host[:port] or smtps://…")
        implicit = parts.scheme == "smtps"
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if implicit else 587),
            implicit_tls=implicit,
            user=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )


class EmailNotifier:
    def __init__(self, smtp_url: str, sender: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._server = SmtpServer.from_url(smtp_url)
        self.sender = sender
        self.domain = sender.rsplit("@", 1)[-1].strip(">") or "localhost"
        self._timeout = timeout

    def send(
        self, to: Sequence[str], incident: IncidentView, text: str, *, ledger_id: int,
        stamp: str, thread_root: str | None = None,
    ) -> str:
        """Mail one event of ``incident``; returns its Message-ID (``<…>``)."""
        mid = message_id(ledger_id, stamp, self.domain)
        message = self._message(to, subject(incident), mid)
        if thread_root and thread_root != mid:
            message["In-Reply-To"] = thread_root
            message["References"] = thread_root
        body = [text, "", f"{incident.title}: {incident.status}, {incident.severity}"]
        if incident.summary:
            body.append(incident.summary)
        body += ["", f"Open it: {incident.incident_url}"]
        message.set_content("\n".join(body) + "\n")
        message.add_alternative(_html(incident, text), subtype="html")
        self._deliver(message, to)
        return mid

    def post_digest(
        self, channel: str, lines: list[str], *, ledger_id: int,
        covers: Sequence[tuple[int, str]] = (),
    ) -> str:
        """One message listing ``lines``, for the recipients a digest key names."""
        to = digest_recipients(channel)
        stamp = covers[0][1] if covers else ""
        mid = message_id(ledger_id, stamp, self.domain)
        message = self._message(to, f"[digest] {len(lines)} incident notification(s)", mid)
        message.set_content("\n".join(lines) + "\n")
        items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
        message.add_alternative(f"<html><body><ul>{items}</ul></body></html>", subtype="html")
        self._deliver(message, to)
        return mid

    def find_digested(
        self, channel: str, *, rows: Sequence[tuple[int, str]], oldest: float | None = None
    ) -> dict[int, str]:
        # A mailbox cannot be searched: a digest resent after a crash carries
        # the same Message-ID, which mail clients fold into one.
        return {}

    def _message(self, to: Sequence[str], title: str, mid: str) -> EmailMessage:
        message = EmailMessage()
        message["Subject"] = title
        message["From"] = self.sender
        message["To"] = ", ".join(to)
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = mid
        return message

    def _deliver(self, message: EmailMessage, to: Sequence[str]) -> None:
        server = self._server
        # No instrumentation covers smtplib: the send is a span of its own.
        with tracing.client_span(
            "smtp send", **{"server.address": server.host, "server.port": server.port}
        ):
            self._send_over_smtp(server, message, to)

    def _send_over_smtp(self, server: SmtpServer, message: EmailMessage, to: Sequence[str]) -> None:
        sent_data = False
        try:
            context = ssl.create_default_context()
            if server.implicit_tls:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    server.host, server.port, timeout=self._timeout, context=context
                )
            else:
                smtp = smtplib.SMTP(server.host, server.port, timeout=self._timeout)
            with smtp:
                smtp.ehlo()
                if not server.implicit_tls and smtp.has_extn("starttls"):
                    smtp.starttls(context=context)
                    smtp.ehlo()
                if server.user:
                    smtp.login(server.user, server.password or "")
                sent_data = True
                refused = smtp.send_message(message, from_addr=self.sender, to_addrs=list(to))
        except smtplib.SMTPRecipientsRefused as exc:
            raise _refused(exc.recipients) from None
        except smtplib.SMTPResponseException as exc:
            raise _reply_error(exc.smtp_code, exc.smtp_error) from None
        except smtplib.SMTPServerDisconnected as exc:
            raise _unreachable(server, exc, sent_data) from None
        except smtplib.SMTPException as exc:
            # Not a reply code: the server lacks what the URL asks for (AUTH).
            raise PermanentDeliveryError(f"SMTP: {exc}") from None
        except OSError as exc:  # refused, reset, timed out, TLS failures
            raise _unreachable(server, exc, sent_data) from None
        if refused:
            log.warning("some recipients refused", refused=sorted(refused))


def digest_recipients(channel: str) -> list[str]:
    return [a for a in channel.removeprefix(DIGEST_KEY_PREFIX).split(",") if a]


def _unreachable(server: SmtpServer, exc: Exception, sent_data: bool) -> Exception:
    # After DATA began, the server may have taken the message: the retry
    # sends the same Message-ID, which mail clients show once.
    return TransientDeliveryError(
        f"SMTP server {server.host}:{server.port} unreachable: {type(exc).__name__}: {exc}",
        maybe_delivered=sent_data,
    )


def _reply_error(code: int, reply: bytes | str) -> Exception:
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    message = f"SMTP {code} {text}".strip()
    if 400 <= code < 500:
        return TransientDeliveryError(message, code=str(code))
    return PermanentDeliveryError(message, code=str(code))


def _refused(recipients: dict) -> Exception:
    codes = [code for code, _ in recipients.values()]
    detail = "; ".join(
        f"{addr}: {code} {reply.decode(errors='replace') if isinstance(reply, bytes) else reply}"
        for addr, (code, reply) in sorted(recipients.items())
    )
    if all(400 <= code < 500 for code in codes):
        return TransientDeliveryError(f"SMTP recipients refused for now: {detail}")
    return PermanentDeliveryError(f"SMTP recipients refused: {detail}")


def _html(incident: IncidentView, text: str) -> str:
    link = html.escape(incident.incident_url, quote=True)
    summary = f"<p>{html.escape(incident.summary)}</p>" if incident.summary else ""
    return (
        "<html><body>"
        f"<p>{html.escape(text)}</p>"
        f"<h2>[{html.escape(incident.severity)}] {html.escape(incident.title)}</h2>"
        f"<p>Status: {html.escape(incident.status)}</p>{summary}"
        f'<p><a href="{link}">Open incident #{incident.id}</a></p>'
        "</body></html>"
    )
