"""The errors of the API client (`p2pdm.apiclient`, which re-exports them).

Apart from the client so that the CLI can catch them without importing
http.client and the email package beneath it: `p2pdm run` needs neither.
"""

from __future__ import annotations


class ApiClientError(Exception):
    """Base of the errors this client raises."""


class ApiUnavailable(ApiClientError):
    """No node answers on the socket, or the connection to it was lost."""


class EventStreamEnded(ApiUnavailable):
    """The node ended the event stream (it is shutting down, usually)."""


class ApiRequestError(ApiClientError):
    """The node answered with an error status (502: an answer that is not its API's)."""

    def __init__(self, status: int, message: str, hint: str | None = None) -> None:
        super().__init__(f"{message} ({hint})" if hint else message)
        self.status = status
        self.message = message
        self.hint = hint
