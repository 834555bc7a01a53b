"""The sending limits that well-known providers publish, to pre-fill the settings with."""

from __future__ import annotations

from config.mail_settings import SendingLimits

__all__ = ["GRAPH_LIMITS", "provider_limits"]

# Exchange Online limits (learn.microsoft.com, "Exchange Online limits", sending limits): a
# message rate of 30 messages per minute, 10,000 recipients per day and 500 recipients per
# message, per mailbox. They hold for every way a mailbox submits, Graph's sendMail included
# (Graph's own throttle, 10,000 requests per 10 minutes per mailbox, is looser).
EXCHANGE_ONLINE = SendingLimits(
    max_messages_per_minute=30, max_recipients_per_day=10_000, max_recipients_per_message=500
)
GRAPH_LIMITS = EXCHANGE_ONLINE
# Google Workspace, "Gmail sending limits in Google Workspace": about 2,000 messages per day
# per user and 100 recipients per message sent over SMTP. outbox counts recipients, so a day
# of 2,000 recipients keeps under the message limit whatever the messages hold.
GMAIL = SendingLimits(max_recipients_per_day=2_000, max_recipients_per_message=100)
# Google Workspace, "SMTP relay service limits": 10,000 recipients per day per user, 100
# recipients per message.
GMAIL_RELAY = SendingLimits(max_recipients_per_day=10_000, max_recipients_per_message=100)

_BY_SERVER = {
    "smtp.office365.com": EXCHANGE_ONLINE,
    "smtp-legacy.office365.com": EXCHANGE_ONLINE,
    "smtp.gmail.com": GMAIL,
    "smtp-relay.gmail.com": GMAIL_RELAY,
}


def provider_limits(server: str) -> SendingLimits | None:
    """The published limits of the provider behind this SMTP server, if it is a known one."""
    return _BY_SERVER.get(server.strip().rstrip(".").lower())
