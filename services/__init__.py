"""graduate's deployable services and the contracts they share."""
