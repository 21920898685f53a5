"""Fake vendor APIs for the sync-worker's tests and benchmarks.

One module per vendor (`mailchimp`, `sendgrid`, `klaviyo`, `commerce`, `webhook`), each with a
`create_app(state=None)` factory over an in-memory state that tests read and seed directly.
`server.serve(app)` runs one inside the current event loop; `python -m tests.fakes <vendor>
--port N` runs one as a process, driven over `/_fake/*` (faults, state, config).
"""
