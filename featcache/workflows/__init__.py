"""What each command does, between the API and the phase packages."""
