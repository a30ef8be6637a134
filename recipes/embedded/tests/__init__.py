"""The recipe's tests, a package so that their conftest does not take the module name `conftest`
that the product's tests import their helpers from (`pytest` runs both suites in one session)."""
