"""Alarms: conditions (pure), episodes in the store, the monitoring task and its webhook."""
