"""Apps (tenants): Amplitude destination, region, enabled events, and the tokens that guard their API."""
