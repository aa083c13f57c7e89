"""The channel registry: device-level channel records (push, e-mail, SMS) per app, keyed by subscription id."""
