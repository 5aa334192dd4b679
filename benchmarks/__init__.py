"""sockway's benchmarks: fan-out, echo round trips and idle memory, measured against
Node's ws and sockjs-node in the same run by a Node load generator. See README.md."""
