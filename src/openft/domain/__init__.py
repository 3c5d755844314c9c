"""Pure rules of the domain, standard library only."""
