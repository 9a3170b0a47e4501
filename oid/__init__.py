"""The Open Images domain: class table, hierarchy, levels, validated CSV readers,
the train/val split, the challenge metric and the synthetic mini dataset.

Nothing in this package imports TensorFlow, so it can be used by the Beam job,
by the metric command and by notebooks alike.
"""

ROOT_MID = "/m/0bl9f"  # "Entity": the virtual root of every Open Images hierarchy, never a class.
