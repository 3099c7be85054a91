"""The database engine keeps statement parameters out of its errors."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from incident.db import engine_for


def test_a_failed_statement_does_not_quote_its_parameters(database_url):
    value = "label-value-that-must-not-leak-7f3a"
    with pytest.raises(DBAPIError) as failure, engine_for(database_url).connect() as conn:
        # Fails for a reason of its own; SQLAlchemy would append the parameters.
        conn.execute(text("SELECT :v, 1 / 0"), {"v": value})
    assert value not in str(failure.value)
    assert "hidden due to hide_parameters" in str(failure.value)
