"""Journeys and event rules: definitions as data (``model``), rule matching (``rules``), the pure
transitions of one user through a flow (``engine``) and the durable timers' index (``timers``)."""
