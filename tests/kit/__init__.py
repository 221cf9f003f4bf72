"""The one test kit for the outside world recess talks to, used by the tests, the demo's Slack
stand-in and the benchmarks alike, so a fix to how Slack is played lands once.

- `tests.kit.slack`:  `FakeSlack`, Slack's Web API and response URLs on a small real HTTP server
                      that records every call and keeps the channel as Slack would show it
                      (`FakeSlackProcess`: the same server in a child process, for benchmarks).
- `tests.kit.signer`: `sign()` and `SlackSender`, requests to recess's /slack/events signed and
                      shaped exactly as Slack sends them.
- `tests.kit.load`:   `Load`, keep-alive clients counting the answers per version and the
                      failures, in this process (tests) or in a child process (benchmarks).
- `tests.kit.serve`:  `Serve`, `recess serve` as a real child process (wait for /healthz, kill -9,
                      restart on the same database, read its log); `Bot`, one already healthy;
                      `wait_for()`. The benchmarks' `RecessProcess` is a `Serve`.
"""
