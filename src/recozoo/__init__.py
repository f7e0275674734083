"""recozoo: a PyTorch Lightning model zoo for long-tail recommendation.

Importing the package sets the process settings every recozoo program needs before torch loads
(`recozoo.runtime.configure_process`: passive OpenMP waiting unless the user chose otherwise,
full garbage collections every 1000 young ones instead of 10, library warnings a user cannot act
on filtered): ``python -m recozoo.<module>`` runs this file
before the module's own imports, so no entry point can load torch first.
"""

from recozoo.runtime import configure_process

configure_process()
