"""Mail to end users: building each message from its template, in the user's
language and the client's brand, and sending it through SMTP or a folder (``delivery``), and
the development outbox page that shows what was sent (``devoutbox``).
"""
