"""Local fakes of external systems for tests and benches (bound to 127.0.0.1, port 0).

``statewave``: :class:`FakeStatewave`, the Statewave v1 ingest API with the
real server's auth, validation and failure rules plus scripted failures.
``github``: :class:`FakeGitHub`, the REST API subset the GitHub connector uses.
``slack``: signing helpers for Events API deliveries.
"""

from .statewave import (
    AcceptedEpisode,
    Close,
    Delay,
    FakeStatewave,
    Hang,
    RecordedRequest,
    Reset,
    Respond,
)

__all__ = [
    "AcceptedEpisode",
    "Close",
    "Delay",
    "FakeStatewave",
    "Hang",
    "RecordedRequest",
    "Reset",
    "Respond",
]
