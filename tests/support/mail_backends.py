"""A mail backend for worker processes under test: each message is a line in a file, and one address hangs.

Set in a child process's environment: EMAIL_BACKEND=tests.support.mail_backends.FileLineBackend,
MAIL_LOG=<file> (one JSON line per message: its recipients) and MAIL_HANG_ON=<address> (a message to it
writes a "hanging" line and then sleeps, so the test can kill the process mid-send).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.message import EmailMessage


class FileLineBackend(BaseEmailBackend):
    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        for message in email_messages:
            self._line({"to": list(message.to)})
            if os.environ.get("MAIL_HANG_ON") in message.to:
                self._line({"hanging": list(message.to)})
                time.sleep(120)
        return len(email_messages)

    def _line(self, data: dict[str, Any]) -> None:
        with open(os.environ["MAIL_LOG"], "a") as log:
            log.write(json.dumps(data) + "\n")
