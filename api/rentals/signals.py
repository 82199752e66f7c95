"""
Extension points for code outside the rental domain (payments, notifications).

`rental_completed` is sent once per closed rental, after the transaction that closed it
has committed, with `rental` (the closed Rental) and `offline_return` (True when a full
sync recovered a return the cabinet never reported). Receivers run outside the station
lock; an exception in a receiver is logged and does not affect the sender's answer.
"""

from django.dispatch import Signal

rental_completed = Signal()

# Sent once per cancelled rental (its ejection refused, or the cabinet still had the bank
# after the grace), after commit, with `rental`. Nothing was charged; payment code that
# reserved money releases it here.
rental_cancelled = Signal()
