"""The marketplace: worker records and the registry service, the router and reputation, challenges, offers and leases of tasks and jobs, and where an assigned attempt is dispatched."""
