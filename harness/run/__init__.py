"""The run machinery: sessions, the prepared suite, plan -> execute -> reduce over work units, executors, the one result format."""
