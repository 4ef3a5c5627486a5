"""The machinery every op runs on: which implementation runs a call (``dispatch``), the device-side record of
out-of-range ids and the index-check modes (``errors``), the argument checks made once at the top of each call
(``validation``), and the config lists the tuner chooses from (``configs``)."""
