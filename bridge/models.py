"""Every table, imported in one place so SQLModel's metadata (and Alembic) sees the whole schema."""
from bridge.apps.models import App, AppToken
from bridge.catalog.models import MessageCatalogEntry, MessageDetailsTotal
from bridge.cohorts.models import (Cohort, CohortBatch, CohortMember, CohortPlatformSync, CohortReportSnapshot,
                                   PlatformTag, PlatformUser)
from bridge.delivery.models import DeliveredMinute, EventReceipt, OutboxEvent
from bridge.registry.models import Subscription

__all__ = ["App", "AppToken", "Cohort", "CohortBatch", "CohortMember", "CohortPlatformSync", "CohortReportSnapshot",
           "DeliveredMinute", "EventReceipt", "MessageCatalogEntry", "MessageDetailsTotal", "OutboxEvent", "PlatformTag", "PlatformUser", "Subscription"]
