"""The send_<channel> stage, one module per concern (the agents are agents/send_<channel>.py).

    decisions   pure: retry policy, token bucket arithmetic, addresses, outcome events, content
    ledger      idempotency: the send ledger, batch claims, acknowledgements as they arrive
    pacing      rate and pacing in Redis: the channel's token bucket, the queue lag told to the gate
    sender      one outbox batch: status, claim, ledger, render, rate, provider, retries, events
    consumer    the worker's loop: concurrent batches, offsets committed behind the oldest

Nothing is re-exported here: import from the module that holds it, so that importing the
decisions never pulls in Redis or Kafka.
"""
