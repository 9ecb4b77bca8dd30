"""Secrets are redacted from a job's output however the engine happens to chunk it."""
from hypothesis import given, settings, strategies as st

from orchestrator.secrets import Redactor, StreamRedactor


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.text(alphabet="abc", min_size=2, max_size=5), min_size=1, max_size=3),
       st.text(alphabet="abcx", max_size=60), st.lists(st.integers(0, 60), max_size=8))
def test_streamed_output_is_redacted_exactly_as_the_whole_would_be(secrets, text, cuts):
    redactor = Redactor(secrets)
    data = text.encode()
    cuts = sorted({c for c in cuts if c <= len(data)})
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
    stream = StreamRedactor(redactor)
    emitted = [stream.feed(piece) for piece in pieces] + [stream.flush()]
    assert b"".join(emitted) == redactor.bytes(data)
    # Emitted chunks are final: none ends inside a replacement, so stdout and stderr can
    # interleave safely. (The text has no "<"; every "<" starts a replacement.)
    for chunk in emitted:
        assert chunk.count(b"<") == chunk.count(b"<redacted>")
