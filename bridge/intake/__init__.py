"""Intake: the messaging platform's event stream, validated and written durably to the outbox."""
