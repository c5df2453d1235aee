"""Everything the tests share: helpers, scenarios and personas live here and only here (test
modules import from here, never from each other; fixtures are in the conftest.py files).

- Real services: `prefect_server`, `redis_server`, `redis_process`, `postgres`, `machine`.
- Flows and the helper: `flows` (the `flows` fixture), `flow_scripts/`, `background` (slow
  scenarios in threads), `in_process`, `prefect_limits`, `prefect_events`, `patient`.
- Faults: `fault_proxy`, `cloud_standin`, `listener_process`, `periodic_sync`.
- Our side: `board_data` (a sample board), `board_page` (the board in Chromium), `operating`
  (sync, confirmation forms, outcomes), `slot_watch`, `safety` (the adversarial suite),
  `readouts` (rows, banner, /metrics), `markup`, `personas`.
- Plumbing: `net`, `paths`, `entry_points`.
"""
