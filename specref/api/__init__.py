"""Ready-made entry points over the core: the `Speculator` checkpoint API and the façades with the
familiar names of the small speculative-sampling libraries go here. Imports the core, `specref.formats` and
`specref.train`; the tools import it."""
