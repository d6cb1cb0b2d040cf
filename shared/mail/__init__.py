"""Mail: rendering (messages), queuing in the caller's transaction (outbox) and delivery (sender, transports).

Nothing here knows a route; both services queue through `outbox.queue_email` and run a `sender.MailSender`.
"""
