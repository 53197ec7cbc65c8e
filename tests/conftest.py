"""Property tests draw the same examples on every run (CI results do not depend on luck);
``HYPOTHESIS_PROFILE=explore`` draws fresh ones, for hunting new counterexamples locally."""
import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
