"""Outside parties notify talks to: the senders that put messages on the wire (SMTP, the SMS provider, webhooks)."""
