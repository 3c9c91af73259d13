"""Feast entities: the contact (prospect or customer) every feature is about."""

from feast import Entity, ValueType

customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.STRING,
    description="A contact of the brand: a prospect (no purchase yet) or a customer.",
)
