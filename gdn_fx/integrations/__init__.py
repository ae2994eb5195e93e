"""Adapters that run other libraries' models on gdn_fx layers (imported on demand, never at ``import gdn_fx``)."""
