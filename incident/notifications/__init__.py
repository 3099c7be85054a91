"""Who is told what: the notification ledger, delivery, escalation timers."""
