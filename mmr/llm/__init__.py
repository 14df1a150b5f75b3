"""The shared floor for talking to OpenAI-compatible servers, below `mmr.data` and
`mmr.rewards` (neither imports the other for it): `server` is the one local server that
tests, benchmarks and the demo's teacher answer from."""
