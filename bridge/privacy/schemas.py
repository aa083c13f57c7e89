"""What `DELETE /v1/apps/<app_id>/users/<external_id>` and `bridge users erase` answer."""
from __future__ import annotations

from marshmallow import Schema, fields


class OutboxRemovedSchema(Schema):
    """The person's outbox events removed, per state, and other users' events edited."""

    pending = fields.Integer(required=True, metadata={"description": "Events not sent to Amplitude yet."})
    dead = fields.Integer(required=True, metadata={"description": "Dead-lettered events."})
    skipped = fields.Integer(required=True, metadata={
        "description": "Events stored without a user: theirs, or waiting (unresolved_user) on one of their channel records."})
    details_redacted = fields.Integer(required=True, metadata={
        "description": "Other users' events a value holding one of their channel identifiers was taken out of."})


class RemovedSchema(Schema):
    """How many of each kind of row (`bridge.privacy.service.Erased`); all zero when nothing was left."""

    channel_records = fields.Integer(required=True, metadata={"description": "Channel records with their External User ID."})
    outbox_events = fields.Nested(OutboxRemovedSchema, required=True)
    cohort_memberships = fields.Integer(required=True, metadata={
        "description": "Memberships in the app's cohorts, current or former."})
    cohort_batch_user_lists = fields.Integer(required=True, metadata={
        "description": "Cohort batches whose user list named them (their id is taken out; counts stay)."})
    cohort_batch_examples = fields.Integer(required=True, metadata={
        "description": "Cohort batches whose examples of unusable entries quoted their External User ID or a channel "
                       "identifier of theirs (the example's message is replaced; the entry is still counted)."})
    platform_tags = fields.Integer(required=True, metadata={
        "description": "The bridge's records of their tags on the messaging platform (the platform's own are not touched)."})
    catalog_entries = fields.Integer(required=True, metadata={
        "description": "Message-catalog entries whose details held a channel identifier of theirs, or their External User ID "
                       "when it is distinctive (8 characters or more, or shaped like an e-mail address or a phone number)."})
    app_error_texts = fields.Integer(required=True, metadata={
        "description": "The app's last-error texts that quoted what catalog entries are searched for, cleared."})


class ErasureSchema(Schema):
    """What one erasure removed. The External User ID is not repeated."""

    removed = fields.Nested(RemovedSchema, required=True)
