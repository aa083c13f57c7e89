"""The message catalog: a message's details, learned from events that carry them, completing the events that arrive without them."""
