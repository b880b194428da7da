"""What the tests share: real servers and clusters to start, fakes, and the contract suites."""
