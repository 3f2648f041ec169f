// Error pages: the usual navigation bar above the server's message.
import { initNav } from "./common.js";

initNav(null).catch(() => {});
