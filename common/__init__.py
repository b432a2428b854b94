"""What both services and the workers share.

Configuration from the environment, logging with request ids, the declarative
base, the RS256 key ring and token verifier, the event envelope and the
transactional outbox. Nothing here imports an app or a worker.
"""
