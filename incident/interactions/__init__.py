"""Acting on incidents from Slack: a click, checked and parsed at the door
(``incident.api.slack``), becomes a task that acts through the incident store
as that Slack user, and answers the clicker through the click's response_url."""
