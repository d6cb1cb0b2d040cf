"""Login throttling of the auth service: the shared throttle (shared.throttle), per username and per address.

The counting lives in `shared.throttle`, as the users service counts wrong current_password guesses there too;
these names stay importable from here for the auth service's callers.
"""

from shared.client_address import _is_trusted, client_address  # noqa: F401  (moved; callers import them here)
from shared.throttle import (  # noqa: F401  (re-exported)
    ATTEMPTS,
    BY_ADDRESS,
    BY_KEY,
    AttemptsAheadBusy,
    begin_login_attempt,
    clear_failures,
    forget_attempt,
    record_failure,
    throttle_key_for_username,
)
from shared.throttle import Throttled as LoginThrottled  # noqa: F401  (re-exported)
