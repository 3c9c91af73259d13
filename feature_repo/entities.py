"""Feast entities: the contact (prospect or customer) every feature is about.

Built by features/feast_objects.py, like every object of this repo, so the Feast CLI and
`engage features build` define the same objects.
"""

from features.feast_objects import customer_entity

customer = customer_entity()
