// NOT IMPLEMENTED YET: this first version only fixes the signatures the UI
// codes against (see index.ts for the documentation). Every method that
// needs the wasm core rejects with EngineError "not_implemented" until the
// facade lands.
import type {
  AccountView,
  ConnectionStatus,
  DeviceInfo,
  EngineListener,
  EngineOptions,
  PostView,
  TimelineSummary,
} from "./index.ts";
import { EngineError } from "./index.ts";

function notYet(): never {
  throw new EngineError("not_implemented", "the web engine is not implemented yet");
}

export class Engine {
  private listeners = new Set<EngineListener>();

  private constructor(readonly options: EngineOptions) {}

  static async open(options: EngineOptions = {}): Promise<Engine> {
    return new Engine(options);
  }

  device(): DeviceInfo | null {
    return null;
  }

  async registerDevice(_name: string): Promise<DeviceInfo> {
    notYet();
  }

  connect(): void {}

  disconnect(): void {}

  status(): ConnectionStatus {
    return "offline";
  }

  on(listener: EngineListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  timelines(): TimelineSummary[] {
    return [];
  }

  posts(_timelineId: string): PostView[] {
    return [];
  }

  accounts(): AccountView[] {
    return [];
  }

  async refreshAccounts(): Promise<AccountView[]> {
    notYet();
  }

  async createTimeline(): Promise<string> {
    notYet();
  }

  async addPerson(_timelineId: string, _accountId: string): Promise<void> {
    notYet();
  }

  async removePerson(_timelineId: string, _accountId: string): Promise<void> {
    notYet();
  }

  async post(
    _timelineId: string,
    _text: string,
    _options: { replyTo?: number; kind?: "text" | "report" } = {},
  ): Promise<PostView> {
    notYet();
  }

  async markRead(_timelineId: string, _seq?: number): Promise<void> {
    notYet();
  }

  async wipe(): Promise<void> {
    notYet();
  }
}
