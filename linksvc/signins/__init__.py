"""Sign-in by link or by code: the state machine of a sign-in from its start to its
approval, with its secrets, its mail and its purge (``flow``), and the end-user pages a
person presses through to approve or refuse one (``pages``). State changes of the links it
uses go through the ledger.
"""
