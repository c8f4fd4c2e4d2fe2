"""Built-in schedcp plugins; registered by the host like third-party ones."""
