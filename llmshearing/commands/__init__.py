"""One typed function per ``llmshearing`` command: check the arguments, run the library, write the outputs (plots
included). ``llmshearing.cli`` turns flags into calls of these; scripts call them directly."""
